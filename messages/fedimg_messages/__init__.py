"""Message schemas for fedimg's fedora-messaging topics.

Install this package to publish or consume them: fedora-messaging finds each class through its
``fedora.messages`` entry point (the name travels in the ``fedora_messaging_schema`` header).
"""

from fedimg_messages.compose import ComposeCompleteV1
from fedimg_messages.image import ImageCopyV1, ImagePublishV1, ImageTestV1, ImageUploadV1

__all__ = ["ComposeCompleteV1", "ImageCopyV1", "ImagePublishV1", "ImageTestV1", "ImageUploadV1"]
