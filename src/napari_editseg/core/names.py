"""Model names the command line shows before anything heavy is imported (``--help`` stays fast)."""

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
# The shapes-world editor trained in this repository (5 MB, in the package): works offline, knows only the
# procedural shapes world (`--sample shapes`); docs/shapes-world.md says how well.
DEMO_MODEL = "shapes-world-demo"
