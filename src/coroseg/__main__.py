from coroseg.cli import main

main()
