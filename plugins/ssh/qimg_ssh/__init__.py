"""qimg-ssh: the ``ssh`` protocol (QEMU's ssh driver, SFTP). Registers the name and prefix only;
the driver (and paramiko) load when an ssh:// image is opened."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("ssh", "qimg_ssh.protocol:SshProtocol", prefixes=("ssh",))
