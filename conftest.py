"""Root pytest configuration: ``pytest --nbval book`` compares stored outputs with the tolerances of
:mod:`flatcomp_tutorial.nbval_plugin` and keeps progress widgets out of the kernels' outputs."""
pytest_plugins = ["flatcomp_tutorial.nbval_plugin"]
