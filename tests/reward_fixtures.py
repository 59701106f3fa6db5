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


def parity_unless_plus(prompts, completions, **kwargs):
    """length_parity, except 1.0 for every completion of an addition: those groups are all equal (dynamic sampling
    drops them and refills)."""
    return [1.0 if "+" in p else float(len(c) % 2 == 0) for p, c in zip(prompts, completions)]


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


# -- the other kinds of reward: per-sample, async, with extra info, a class (Ray actor) -----------------------


def exact_one(prompt, completion, answer=None, **row):
    """Per-sample (spec per_sample: true): one prompt, one completion, that row's columns."""
    if completion == "boom":
        raise ValueError("cannot score 'boom'")
    return float(completion.strip() == str(answer))


async def exact_one_async(prompt, completion, answer=None, **row):
    import asyncio

    await asyncio.sleep(0.01)
    return {"reward": float(completion.strip() == str(answer)), "chars": len(completion), "note": "async"}


async def lengths_async(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def with_extras(prompts, completions, **columns):
    """Returns extra info per sample: numbers are logged, the rest only goes to rollouts.jsonl."""
    return [{"reward": 1.0, "searches": i, "facts": ["x"] * i} if i % 2 == 0 else {"reward": 0.5}
            for i in range(len(completions))]


class LengthScorer:
    """A heavy scorer as a class: built once (here: a 'model' that is a scale), runs as Ray actors."""

    def __init__(self, scale: float = 1.0):
        import os

        self.scale, self.pid = scale, os.getpid()

    def __call__(self, prompts, completions, **columns):
        if "boom" in completions:
            raise ValueError("LengthScorer cannot score 'boom'")
        return [{"reward": self.scale * len(c), "pid": self.pid} for c in completions]


class BrokenScorer:
    def __init__(self):
        raise RuntimeError("no weights for the judge")

    def __call__(self, prompts, completions, **columns):
        return [0.0] * len(completions)


GENERATION_DONE = None  # a threading.Event the concurrency test sets when the fleet has returned


def waits_for_generation(prompts, completions, **columns):
    """A slow reward: it cannot finish before generation has ended; if scoring blocked generation, it never would."""
    finished = GENERATION_DONE.wait(timeout=120)
    return [{"reward": float(len(c)), "saw_generation_done": float(finished)} for c in completions]


class Counter:
    """A reward with state (how many samples it has seen), saved in checkpoints through state_dict."""

    def __init__(self):
        self.seen = 0

    def __call__(self, prompts, completions, **columns):
        self.seen += len(completions)
        return [float(self.seen)] * len(completions)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]
