"""Deprecated import path: see sftcore._deprecated.MOVED for what replaces it."""

from ._deprecated import moved

__getattr__ = moved(__name__, globals())
