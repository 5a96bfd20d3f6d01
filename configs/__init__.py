# Bundled sweep configs; shipped inside the wheel as the package data of `flashbench.configs`.
