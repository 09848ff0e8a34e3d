from medshard.cli import main

main()
