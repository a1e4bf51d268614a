from cwm_agent.cli import main

main()
