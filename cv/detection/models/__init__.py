"""The network: the SSD meta-architecture, default boxes, box maths, layers, CPU post-processing."""
