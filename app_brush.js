() => {
  const brush = () => { const c = document.querySelector('#brush input:checked'); return c && c.value !== 'off' ? c.value : null; };
  const photo = (e) => { const i = e.target; return i instanceof HTMLImageElement && i.closest('#photo') ? i : null; };
  const toImage = (img, e) => {
    const r = img.getBoundingClientRect(), fit = Math.max(img.naturalWidth / r.width, img.naturalHeight / r.height);
    const s = getComputedStyle(img).objectFit === 'scale-down' ? Math.max(1, fit) : fit;  // natural px per CSS px
    const ox = (r.width - img.naturalWidth / s) / 2, oy = (r.height - img.naturalHeight / s) / 2;
    return [(e.clientX - r.left - ox) * s, (e.clientY - r.top - oy) * s, s];
  };
  let stroke = null, canvas = null, count = 0;
  const drop = () => { if (canvas) { canvas.remove(); canvas = null; } };
  window.addEventListener('pointerdown', (e) => {
    const img = photo(e), kind = brush();
    if (!img || !kind) return;
    e.preventDefault(); e.stopPropagation(); drop();
    const size = parseFloat(document.querySelector('#brush-size input[type=number]').value) || 20;
    const r = img.getBoundingClientRect();
    canvas = document.createElement('canvas');
    canvas.width = r.width; canvas.height = r.height;
    Object.assign(canvas.style, {position: 'absolute', left: (r.left + scrollX) + 'px', top: (r.top + scrollY) + 'px',
                                 pointerEvents: 'none', zIndex: 1000});
    document.body.appendChild(canvas);
    const g = canvas.getContext('2d'), [, , s] = toImage(img, e);
    g.strokeStyle = kind === 'add to subject' ? 'rgba(30,144,255,0.6)' : 'rgba(255,60,60,0.6)';
    g.lineWidth = size / s; g.lineCap = g.lineJoin = 'round';
    g.beginPath(); g.moveTo(e.clientX - r.left, e.clientY - r.top);
    stroke = {img, g, r, brush: kind, size, points: [toImage(img, e).slice(0, 2)]};
    img.addEventListener('load', drop, {once: true});  // the new preview replaces the drawn stroke
  }, true);
  window.addEventListener('pointermove', (e) => {
    if (!stroke) return;
    e.preventDefault();
    stroke.points.push(toImage(stroke.img, e).slice(0, 2));
    stroke.g.lineTo(e.clientX - stroke.r.left, e.clientY - stroke.r.top); stroke.g.stroke();
  }, true);
  window.addEventListener('pointerup', (e) => {
    if (!stroke) return;
    const box = document.querySelector('#stroke textarea');
    box.value = JSON.stringify({n: ++count, brush: stroke.brush, size: stroke.size,  // n: never the same text twice
                              points: stroke.points.map((p) => p.map((v) => Math.round(v * 10) / 10))});
    box.dispatchEvent(new Event('input', {bubbles: true}));  // Gradio then sends a change event
    stroke = null;
  }, true);
  // While a brush is picked, a press on the photo paints: no SAM click, no image drag.
  for (const type of ['click', 'dragstart'])
    window.addEventListener(type, (e) => { if (photo(e) && brush()) { e.preventDefault(); e.stopPropagation(); } }, true);
}
