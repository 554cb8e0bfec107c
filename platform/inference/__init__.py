"""Using a trained model: prediction on video files and store clips (:mod:`.predict`), the
inputs it reads (:mod:`.inputs`), its per-kind results (:mod:`.readers`) and the files it writes
(:mod:`.media`)."""

from veilfed.inference.inputs import VideoInput, read_file, store_input
from veilfed.inference.predict import Predictor
from veilfed.inference.source import model_source

__all__ = ["Predictor", "VideoInput", "model_source", "read_file", "store_input"]
