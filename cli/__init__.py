"""The `tandem` command: the root group (`main`) and the whole stack on one machine (`up`).

This package sits above both applications: it is the only product code that imports the
gateway, the edge agent, the registry and the simulators together.
"""
