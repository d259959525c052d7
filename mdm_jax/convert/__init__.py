"""ml-mdm (PyTorch) checkpoints -> mdm-jax: safe reading, config decoding, strict key mapping, Orbax output.

``python -m mdm_jax.convert --from-mlmdm vis_model.pth --out DIR``; then ``load_converted(DIR)``.
"""

from mdm_jax.convert.cli import convert_checkpoint, load_converted
from mdm_jax.convert.keys import ConversionError, ConversionReport, convert_state_dict
from mdm_jax.convert.mlmdm_config import ConfigDecodeError, decode_args, decode_config, load_config_file
from mdm_jax.convert.readers import SourceCheckpoint, read_checkpoint
from mdm_jax.convert.torch_pickle import CheckpointFormatError, UnsafePickleError, load_pth

__all__ = [
    "CheckpointFormatError",
    "ConfigDecodeError",
    "ConversionError",
    "ConversionReport",
    "SourceCheckpoint",
    "UnsafePickleError",
    "convert_checkpoint",
    "convert_state_dict",
    "decode_args",
    "decode_config",
    "load_config_file",
    "load_converted",
    "load_pth",
    "read_checkpoint",
]
