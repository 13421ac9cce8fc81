"""`python -m task_ingress` runs the `task-ingress` command line."""

from task_ingress.runtime.cli import main

if __name__ == "__main__":
    main()
