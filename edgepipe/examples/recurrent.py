"""A recurrent model shaped like the keyword spotters and sensor classifiers boards run: each 8x8 digit is read as a
sequence of 8 rows of 8 features by an LSTM, whose last state a Dense layer classifies.

It exists so that tests and users see what edgepipe does with recurrent layers: the converter fuses the LSTM
into TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM (batch 1, see ``edgepipe.convert.tflite.converter_for``), whose state
is reset before each inference on the host and on the board.
"""

from __future__ import annotations

from typing import Any

from edgepipe.examples.cnns import CLASSES, INPUT_SHAPE


def lstm(units: int = 32) -> Any:
    """Rows as time steps -> LSTM -> Dense logits (untrained)."""
    from edgepipe.keras_compat import keras

    k = keras()
    inputs = k.Input(INPUT_SHAPE, name="image")
    rows = k.layers.Reshape(INPUT_SHAPE[:2], name="rows")(inputs)
    state = k.layers.LSTM(units, name="lstm")(rows)
    return k.Model(inputs, k.layers.Dense(CLASSES, name="logits")(state), name="lstm_rows")
