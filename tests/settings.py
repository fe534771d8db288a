"""Constants shared by the test modules and their fixtures."""
import os

from pipeline.synthetic.concept_store import BASELINE_EPOCHS, STAGES, VAL_FRACTION  # noqa: F401  (the quality bar's setting)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: tests never depend on the cwd
SMALL_EPOCHS = 20  # epochs per stage of the functional fixture model (conftest `trained`): tests that need *a* model
