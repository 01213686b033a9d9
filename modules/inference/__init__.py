"""Fast decoding: the grid grammar as tensors and a compiled static-cache engine (see ``engine``)."""

from gridlm.modules.inference.engine import COMPILE_MODES, CompileMode, DecodeEngine, EngineConfig, generate

__all__ = ["COMPILE_MODES", "CompileMode", "DecodeEngine", "EngineConfig", "generate"]
