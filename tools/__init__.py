"""Developer tools that are not the product (DESIGN.md): run from a checkout, never installed with the package.

tensorboard_view.py: TensorBoard screenshots in a headless Chromium, ``python tools/tensorboard_view.py RUN --out DIR``.
"""
