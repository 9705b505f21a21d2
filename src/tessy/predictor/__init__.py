"""Training boundary predictors for any teacher and student: sample, annotate, train, evaluate.

1. :func:`~tessy.predictor.sample.asample_traces`: reasoning traces from one role's model.
2. :func:`~tessy.predictor.annotate.aannotate`: style spans of ~60-word windows, from a judge
   model (or the lexicon), checked verbatim.
3. :func:`~tessy.predictor.train.train_predictor`: a two-label token classifier on any Hugging
   Face backbone, saved as a checkpoint the ``classifier`` predictor loads.
4. :func:`~tessy.predictor.evaluate.evaluate`: per-token style P/R/F1 and first-cut accuracy.

Heavy dependencies (torch, transformers) are imported only by training and evaluation.
"""

from .annotate import AnnotateSummary, aannotate, lexicon_spans, locate_spans, parse_judge_output
from .evaluate import Metrics, evaluate, evaluate_windows
from .labels import AnnotatedWindow, Window, cut_windows, next_token_labels, token_types
from .sample import SampleSummary, asample_traces, sample_traces
from .train import TrainResult, TrainSettings, train_predictor

__all__ = [
    "AnnotateSummary",
    "AnnotatedWindow",
    "Metrics",
    "SampleSummary",
    "TrainResult",
    "TrainSettings",
    "Window",
    "aannotate",
    "asample_traces",
    "cut_windows",
    "evaluate",
    "evaluate_windows",
    "lexicon_spans",
    "locate_spans",
    "next_token_labels",
    "parse_judge_output",
    "sample_traces",
    "token_types",
    "train_predictor",
]
