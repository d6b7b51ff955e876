"""Fixed texts the agent attaches to what it says."""

DISCLAIMER = (
    "This is AI-generated information, not a diagnosis or medical advice. It may be wrong. "
    "Talk to a qualified clinician about your health; in an emergency call your local emergency number."
)

DEMO_WEIGHTS_NOTICE = (
    "Demo model: this server runs random demonstration weights, so the text above is meaningless. "
    "Point the service at the released HealthGPT weights for real answers."
)
