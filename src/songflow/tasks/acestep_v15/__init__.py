"""ACE-Step 1.5 tasks: plan builders (``tasks``), the plan and its runner (``plan``), presets per checkpoint
(``presets``) and the frame arithmetic (``inputs``)."""
