"""Producers of trunk-setup jobs. Other services use `ProvisioningClient`."""

from producers.client import JobNotFound, NumberNotFound, ProvisioningClient, WaitTimeout

__all__ = ["JobNotFound", "NumberNotFound", "ProvisioningClient", "WaitTimeout"]
