"""The command line: `python -m pipelines edit | batch | presets | erase | download | page`, installed as
`backdrop` (pyproject.toml: `pip install -e .`).

    python -m pipelines edit photo.jpg --point 512,380 --keyword forest --safety medium --json
    python -m pipelines edit photo.jpg --mask background.png --prompt "a misty pine forest" --seed 7
    python -m pipelines edit photo.jpg --point 512,380 --background white --canvas 1:1
    python -m pipelines batch photos.csv --out edited/ --steps 30 --workers 4
    python -m pipelines batch shoot/ --keyword "white studio" --out edited/
    python -m pipelines presets --json
    python -m pipelines erase --concept "van gogh" --concept-type style
    python -m pipelines download all     # SDXL, SAM and the subject model now, so later runs need no network
    python -m pipelines page --listen    # the page, as `python app.py --listen`

Exit codes: 0 success; 2 bad input (one line `error: ...` on stderr, no traceback); 1 the edit could
not run (no GPU memory, missing weights, cancelled), or a batch row failed (see results.jsonl).
Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pipelines.errors import one_line
from pipelines.settings import Settings, add_arguments
from pipelines.types import EditRequest, edit_options


class _BadArguments(SystemExit):
    """What argparse refused: exit 2, and `main` reports the message like every other bad input
    (one line on stderr, and the error object with `--json`)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise _BadArguments(message)


# argparse takes "-5,20" for an option (only plain negative numbers pass as values).
_NEGATIVE = re.compile(r"^-\d")


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--point -5,20` as `--point=-5,20`, so that the point is read (and refused for being outside the
    photo, with the photo's size) instead of argparse's "expected one argument"."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--point" and _NEGATIVE.match(arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _out(text: str) -> Path:
    """`--out`: a file name whose extension says a format Backdrop writes (`images.OUTPUT_FORMATS`)."""
    from pipelines.images import output_format

    path = Path(text)
    try:
        output_format(path)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def _point(text: str):
    from pipelines.entry.batch import parse_point

    try:
        return parse_point(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _workers(text: str) -> int:
    if text == "auto":
        return 0  # one per GPU (cluster.get_workers)
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or a whole number of at least 1")
    return int(text)


def _canvas(text: str) -> str:
    from pipelines.composite.canvas import parse_canvas_text

    try:
        parse_canvas_text(text)  # the form and sign; whether it holds the photo: validate_request
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# How the command line reads an option's text where more than its type is checked at once.
_CLI_TYPES = {"canvas": _canvas}


def add_request_options(parser: argparse.ArgumentParser, request_type: type = EditRequest) -> None:
    """The edit's options (everything but where the subject is), one flag each from `EditRequest`'s
    definition (`types.edit_options`): `edit` flags, `batch` defaults. A flag's dest is the option's
    short name, the manifest's column; the field's own name is accepted as a second flag."""
    group = parser.add_argument_group("the edit")
    for option in edit_options(request_type):
        flags = [option.flag] + ["--" + alias.replace("_", "-") for alias in option.aliases]
        if option.default is None:
            help_text = option.help + (f" (default: {option.unset})" if option.unset else "")
        else:
            shown = option.kind is not bool and option.default != ""
            help_text = option.help + (f" (default {option.default})" if shown else "")
        if option.kind is bool:
            group.add_argument(*flags, dest=option.name, action="store_true", help=help_text)
            continue
        kind = _CLI_TYPES.get(option.name, option.kind)
        metavar = "NAME" if option.choices and len(", ".join(option.choices)) > 40 else None
        group.add_argument(*flags, dest=option.name, type=kind, default=option.default, choices=option.choices,
                           metavar=metavar, help=help_text + (f": {', '.join(option.choices)}" if metavar else ""))


def build_parser(prog: str = "python -m pipelines") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Backdrop: change a photo's background.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    edit = commands.add_parser("edit", help="edit one photo")
    edit.add_argument("image", type=Path, help="the photo")
    where = edit.add_mutually_exclusive_group(required=True)
    where.add_argument("--point", type=_point, action="append", metavar="X,Y[,LABEL]",
                       help="a click in photo pixels; label 1 = subject (default), 0 = not subject")
    where.add_argument("--mask", type=Path, help="mask image: white = repaint, in the photo's displayed orientation")
    where.add_argument("--subject", choices=("auto",),
                       help="auto: no clicks, the subject model finds the subject (BACKDROP_SUBJECT_MODEL)")
    add_request_options(edit)
    edit.add_argument("--out", type=_out, help="output file (never overwritten): .png (with the edit's parameters), "
                                                 ".jpg or .webp")
    edit.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_arguments(edit, scopes=("edit",))

    batch = commands.add_parser("batch", help="edit many photos: a CSV manifest or a folder (resumable)")
    batch.add_argument("source", type=Path, help="a CSV manifest (one row per edit) or a folder of photos")
    batch.add_argument("--out", type=Path, required=True, help="folder for the outputs and results.jsonl")
    batch.add_argument("--workers", type=_workers, metavar="N|auto",
                       help="run on N Ray workers (a local cluster, or the --ray one; auto: one per GPU); "
                            "default: this process, or one worker per GPU of the --ray cluster")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_request_options(batch)
    add_arguments(batch, scopes=("edit", "cluster"))

    presets = commands.add_parser("presets", help="the SLD safety presets")
    presets.add_argument("--json", action="store_true")

    from pipelines.diffusion.erasure_training import BASES, CONCEPT_TYPES, DEFAULT_HYPERPARAMETERS

    erase = commands.add_parser("erase", help="train concept-erased text encoders")
    erase.add_argument("--concept", required=True, help='the concept to erase, e.g. "van gogh"')
    erase.add_argument("--concept-type", required=True, choices=CONCEPT_TYPES,
                       help="picks the prompt lists (prompts/erasure/) and the default learning rate and epochs")
    erase.add_argument("--epochs", type=int, help="passes over the concept prompts (default 50)")
    default_lrs = ", ".join(f"{t} {lr:g}" for t, (lr, _) in DEFAULT_HYPERPARAMETERS.items())
    erase.add_argument("--lr", type=float, help=f"learning rate (default by type: {default_lrs})")
    erase.add_argument("--name", help="save name under <checkpoint dir>/erased/ (default: the concept's slug)")
    erase.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    erase.add_argument("--seed", type=int, default=0, help="seed of the random target and prompt order")
    erase.add_argument("--anchor-weight", type=float, default=1.0,
                       help="weight of keeping unrelated prompts unchanged (default 1.0)")
    erase.add_argument("--batch-size", type=int, default=4, help="concept prompts per step (default 4)")
    erase.add_argument("--base", choices=BASES, default="sdxl",
                       help="sdxl (both encoders) or sd14 (one encoder, as in the seed)")
    erase.add_argument("--model", help="diffusers folder or model id to erase from (default for sdxl: the "
                                       "SDXL model setting; required for sd14)")
    add_arguments(erase, scopes=("edit",))


    download = commands.add_parser("download", help="fetch the models now (SDXL, SAM, the subject model), to run offline later")
    download.add_argument("what", nargs="?", choices=("sdxl", "sam", "subject", "all"), default="all",
                          help="which models to fetch (default: all)")
    add_arguments(download, scopes=("edit",))

    # Listed for the help only: `main` hands `page ...` to app.py's own parser before this one reads it.
    commands.add_parser("page", add_help=False,
                        help=f"start the page in the browser, as python app.py with its flags ({prog} page --help)")
    return parser


def _progress(stage: str, i: int, n: int, preview) -> None:
    if stage == "download":
        return  # pipelines.downloads draws its own bar, with bytes and speed
    if n:
        end = "\n" if i == n else "\r"
        sys.stderr.write(f"{stage}: step {i}/{n}{end}")
    else:
        sys.stderr.write(f"{stage}...\n")
    sys.stderr.flush()


def cmd_download(args, settings: Settings) -> int:
    """`download [sdxl|sam|subject|all]`: fetch the models so later runs need no network."""
    from pipelines.downloads import ensure_sam_files, sdxl_folder
    from pipelines.masks.subject import ensure_subject_model

    if args.what in ("sam", "all"):
        for path in ensure_sam_files(settings, force=True):  # one .pth, or an ONNX encoder and decoder
            print(f"SAM: {path}")
    if args.what in ("subject", "all"):
        print(f"subject model: {ensure_subject_model(settings, force=True)}")
    if args.what in ("sdxl", "all"):
        print(f"SDXL: {sdxl_folder(settings)}")
    return 0


def cmd_edit(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.editing import run_edit
    from pipelines.outputs import result_record
    from pipelines.images import load_image, load_mask

    image = load_image(args.image, settings.max_image_pixels)
    mask = load_mask(args.mask, image.size) if args.mask else None
    request = EditRequest(image=image, points=args.point or [], mask=mask, auto_subject=args.subject == "auto",
                          **{option.field: getattr(args, option.name) for option in edit_options()})
    result = run_edit(request, settings, on_progress=_progress, out=args.out)
    for notice in result.notices:
        sys.stderr.write(f"note: {notice}\n")
    if args.json:
        print(json.dumps(result_record(result, request), ensure_ascii=False))
    elif result.background != "generate":
        for path in result.paths:
            print(f"{path}  (background {result.background})")
    else:
        print(f"prompt ({result.prompt_tokens}/77 tokens): {result.prompt}")
        print(f"prompt 2 ({result.prompt_2_tokens}/77 tokens): {result.prompt_2}")
        for path, seed, score in zip(result.paths, result.seeds, result.scores):
            print(f"{path}  (seed {seed}, score {score:g})")
    return 0


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.entry import batch

    source = args.source
    if source.is_dir():
        rows, base = batch.folder_rows(source), source
    elif source.is_file():
        rows, base = batch.read_manifest(source), source.parent
    else:
        raise ValueError(f"{source} is neither a CSV manifest nor a folder")
    tasks = batch.make_tasks(rows, vars(args), base, args.out.resolve(), settings)
    records = batch.run_batch(tasks, settings, args.out, workers=args.workers, address=settings.ray_address,
                              progress=not args.no_progress)
    counts = {status: sum(r["status"] == status for r in records) for status in ("done", "skipped", "failed")}
    for record in records:
        if record["status"] == "failed":
            sys.stderr.write(f"row {record['row']} ({record['photo']}): {record['error']}\n")
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"records in {args.out / 'results.jsonl'}")
    return 1 if counts["failed"] else 0


def cmd_presets(args: argparse.Namespace) -> int:
    from pipelines.diffusion.safety import presets_table

    table = presets_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'preset':<12} {'δ warm-up':>9} {'s_S':>6} {'λ':>6} {'s_m':>5} {'β_m':>5}")
    for name, p in table.items():
        print(f"{name:<12} {p['sld_warmup_steps']:>9} {p['sld_guidance_scale']:>6g} {p['sld_threshold']:>6g} "
              f"{p['sld_momentum_scale']:>5g} {p['sld_mom_beta']:>5g}")
    print("(warm-up δ is given for 50 steps and scales with the step count)")
    return 0


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    """Train, save and report an erased encoder pair; the checks come before any loading."""
    from tqdm.auto import tqdm

    from pipelines.diffusion.erasure import check_name, concept_slug, erase_concept
    from pipelines.diffusion.erasure_training import ErasureConfig

    config = ErasureConfig(
        concept=args.concept, concept_type=args.concept_type, epochs=args.epochs, lr=args.lr, seed=args.seed,
        anchor_weight=args.anchor_weight, base=args.base, batch_size=args.batch_size)
    name = check_name(args.name) if args.name else concept_slug(config.concept)
    if args.model is None and config.base == "sd14":
        raise ValueError("--base sd14 needs --model (an SD 1.x diffusers folder or model id)")
    model = args.model or settings.sdxl_model
    device = settings.resolve_device()
    sys.stderr.write(f"erasing {config.concept!r} ({config.concept_type}) from {model} on {device}\n")
    with tqdm(total=None, desc=f"erase {name}", unit="step", file=sys.stderr) as bar:
        def on_progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        report, saved = erase_concept(config, model, settings.erased_dir / name, device,
                                      overwrite=args.force, on_progress=on_progress)
    print(report.summary())
    print(f"saved to {saved}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m pipelines") -> int:
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] == ["page"]:
        import app  # the page (app.py, beside this package: the repository's root, or installed with it)

        app.main(argv[1:], prog=f"{prog} page")
        return 0
    as_json = "--json" in argv
    code, message = _run(argv, prog)
    if message is not None:
        sys.stderr.write(f"error: {message}\n")
        if as_json:  # a program reading stdout gets an object, not nothing
            print(json.dumps({"error": message}, ensure_ascii=False))
    return code


def _run(argv: list[str], prog: str = "python -m pipelines") -> tuple[int, str | None]:
    """Run the command: (exit code, the one-line error or None)."""
    try:
        args = build_parser(prog).parse_args(argv)
    except _BadArguments as exc:
        return 2, exc.message
    try:
        if args.command == "presets":
            return cmd_presets(args), None
        settings = Settings.from_env(overrides=vars(args))
        if args.command == "erase":
            return cmd_erase(args, settings), None
        if args.command == "download":
            return cmd_download(args, settings), None
        if args.command == "batch":
            return cmd_batch(args, settings), None
        return cmd_edit(args, settings), None
    except ValueError as exc:
        return 2, one_line(exc)
    except KeyboardInterrupt:
        return 1, "interrupted"
    except Exception as exc:  # noqa: BLE001 - the command line shows one line, not a traceback
        from pipelines.errors import Cancelled, GpuOutOfMemory

        known = (Cancelled, GpuOutOfMemory, RuntimeError, OSError)
        if not isinstance(exc, known):
            raise
        return 1, one_line(exc)


def backdrop() -> int:
    """The installed `backdrop` command (pyproject.toml's console script)."""
    return main(prog="backdrop")


if __name__ == "__main__":
    sys.exit(main())
