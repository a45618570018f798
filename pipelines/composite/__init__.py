"""The kept subject over its new background: edges, plain backgrounds, canvas, ranking, the output check."""
