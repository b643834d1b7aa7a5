from fixfleet.cli import main

main()
