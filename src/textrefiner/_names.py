"""Names the command line needs before anything heavy is imported (``--help`` loads no torch).

The registries they mirror live next to the code (``training.device.PRECISIONS``, ``training.config.AUGMENT_ON``, ``methods.METHODS``);
``tests/test_cli_help.py`` checks that the two agree.
"""

METHOD_NAMES = ("cocoop", "coop", "kgcoop", "maple", "promptkd", "promptsrc")  # sorted keys of textrefiner.methods.METHODS
PRECISION_NAMES = ("auto", "bf16", "fp16", "fp32", "tf32")  # sorted keys of textrefiner.training.device.PRECISIONS
AUGMENT_NAMES = ("auto", "device", "workers")  # textrefiner.training.config.AUGMENT_ON
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")  # torch.compile modes (reduce-overhead: CUDA graphs)
