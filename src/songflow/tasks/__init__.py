"""songflow.tasks: one module per task (plan builder, runner, ``SPEC``), collected in
``songflow.tasks.registry.TASK_SPECS``; shared plan machinery in ``plan``/``setup``, batching in ``batch``."""
