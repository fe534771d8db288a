"""Constants shared by the test modules and their fixtures."""

STAGES = "image:text,audio:text,video:text"  # the curriculum trained by the shared `trained` fixture
EPOCHS = 30                                   # epochs of each of its stages (and of the baseline)
VAL_FRACTION = 0.2                            # share of ids held out for validation
