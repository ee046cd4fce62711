"""qimg-s3: the ``s3`` protocol (``s3://bucket/key``: an image as an object in S3-compatible
storage). Registers the name and prefix only; the driver (and botocore) load when such an image is
opened."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("s3", "qimg_s3.protocol:S3Protocol", prefixes=("s3",))
