from .latents import main

main()
