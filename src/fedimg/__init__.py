"""fedimg: Fedora composes to tested, public Amazon EC2 images."""

__version__ = "3.0.0.dev0"
