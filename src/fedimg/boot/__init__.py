"""Booting images for real: the sample image builder, the local QEMU boot test, the SSH checks.

``sample`` builds the project's own small bootable disk, ``qemu`` boots an image under QEMU and runs
checks over SSH (Autocloud/tunir style), ``ssh`` holds the check runner the EC2 boot test shares.
"""
