"""Reward functions a user would write, loaded by dotted path in the tests."""


def constant(prompts, completions, value: float = 1.0, **kwargs):
    return [value] * len(completions)


def half_none(prompts, completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def raises(prompts, completions, **kwargs):
    raise ZeroDivisionError("boom")


def uses_columns(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def length_parity(prompts, completions, **kwargs):
    """A reward that differs within a group even for a random model: 1 for an even-length completion."""
    return [float(len(c) % 2 == 0) for c in completions]


def returns(prompts, completions, values=None, **kwargs):
    """Returns `values` as they are (for the checks on what a reward returns)."""
    return values


def hangs(prompts, completions, seconds: float = 30.0, **kwargs):
    import time

    time.sleep(seconds)
    return [1.0] * len(completions)


def fails_on(prompts, completions, bad: str = "b", **kwargs):
    """Raises when it meets the completion `bad`: a bug that only some samples trigger."""
    if bad in completions:
        raise KeyError(f"cannot score {bad!r}")
    return [1.0] * len(completions)


def fails_on_odd_length(prompts, completions, **kwargs):
    """A buggy reward: crashes on any batch that holds an odd-length completion."""
    if any(len(c) % 2 for c in completions):
        raise ValueError("odd length")
    return [1.0] * len(completions)
