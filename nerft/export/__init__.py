"""Take a trained run out of nerft: the adapter with its task, a merged transformers folder, a GGUF.

Every exported copy carries the exact task (labels, system prompt, answer format, stop tokens) in
`task.json`, and an export that changes the weights checks itself against the run before it is
called done.
"""

from nerft.errors import NerftError


class ExportError(NerftError):
    """An export that cannot be made: one line saying what to do."""


class ExportCheckFailed(ExportError):
    """The export was made but does not behave as the run does: the export is wrong, not the
    input (exit code 1)."""

    exit_code = 1
