"""Published annotation formats + a folder of videos -> `longwatch/v1` shards at 1 FPS.

    python -m datamodules.convert FORMAT ANNOTATIONS... --videos DIR --out DIR [--split train]

FORMAT is one of scenewalk, etbench, stride, youcook2, llava-video; see README.md beside this file
for each format's field mapping and the choices made where a format is ambiguous.
"""
from .core import FORMATS, AnnotationError, ConvertConfig
from .driver import Report, convert

__all__ = ["FORMATS", "AnnotationError", "ConvertConfig", "Report", "convert"]
