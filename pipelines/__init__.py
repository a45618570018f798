"""Backdrop's stages. Importing this package loads no weights and touches no network.

Flow (see editing.run_edit): images -> masking -> prompting -> blending (+ safety, erasure) -> images.
"""
