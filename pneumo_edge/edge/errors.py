"""One small error hierarchy; the CLI turns each into a one-line message and exit code."""


class PneumoEdgeError(Exception):
    """Base class: anything the user can fix, reported without a stack trace."""

    exit_code = 2


class DataError(PneumoEdgeError):
    """Missing, empty or wrongly laid-out data."""


class ImageError(PneumoEdgeError):
    """A single file that cannot be decoded as an image."""


class ModelError(PneumoEdgeError):
    """Unknown model name, unusable weights or checkpoint."""


class HubError(PneumoEdgeError):
    """The Hugging Face hub cannot be reached or refused the request."""


class OutputError(PneumoEdgeError):
    """An output path that cannot be written as asked (locked, a folder, not ours to resume)."""


class OutputExistsError(OutputError):
    """An output exists and --force was not given."""


class ParityError(PneumoEdgeError):
    """The exported model does not reproduce the PyTorch model."""

    exit_code = 3

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("parity gate failed:\n" + "\n".join(f"  - {f}" for f in failures))


class BenchError(PneumoEdgeError):
    """A benchmark minimum (--min-auroc, --max-p50-ms) was not met."""

    exit_code = 4
