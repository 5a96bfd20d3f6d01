"""Running a plan: the tasks of a sweep (case × backend, the one skip decision), the executors that
measure them (in process, in isolated worker processes one per GPU, or Ray tasks), precompilation,
``--resume``, and the sweep session that ties them together."""
