"""Local stand-ins for services that cannot run here for real (AWS, ResultsDB), and the sample
composes and synthetic images fed to them.

They exist for the demo, the tests and the benchmarks, and are named as stand-ins wherever used;
no product module imports them (the `demo` extra installs moto).
"""
