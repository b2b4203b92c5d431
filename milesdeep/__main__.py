from milesdeep.cli import main

main()
