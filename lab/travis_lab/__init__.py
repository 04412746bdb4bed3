"""The travis.worker lab: LXC containers as worker boxes, Vagrant-LXC machines as worker VMs."""
