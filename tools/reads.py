"""What a second read asks the model: one question per section of its draft. The agent's second-read step
asks exactly these, and the fine-tune dataset pairs a physician's correction back with them (a leaf module:
no torch, so the agent's start-up does not pay for the training code)."""

READ_QUESTIONS = {
    "findings": "Describe the findings in this {modality} image.",
    "impression": "What is the overall impression?",
}
