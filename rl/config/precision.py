"""The dtype names of `auto` precision (what they mean on a machine: rl/models/precision.py)."""

DTYPES = ("auto", "float32", "bfloat16", "float16")  # rollout.dtype; learner.mixed_precision also takes null (off)
