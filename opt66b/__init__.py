"""opt66b: a hand-written OPT decoder with native head/FFN masks, capture, KV reuse and strict loading."""

from .capture import Capture, frozen
from .config import OPT_CONFIGS, OPTConfig, config_for_size, config_from_hf
from .model import OPT, DecoderOutput, position_ids_from_mask
from .tokenizer import OPTTokenizer, load_tokenizer
from .weights import CheckpointError, load_model, save_checkpoint

__all__ = ["Capture", "frozen", "OPT_CONFIGS", "OPTConfig", "config_for_size", "config_from_hf", "OPT",
           "DecoderOutput", "position_ids_from_mask", "OPTTokenizer", "load_tokenizer", "CheckpointError",
           "load_model", "save_checkpoint"]
