from jbtrace.cli import main

main()
