"""Files written for a person or a program: the JSON of answers, pictures, heat maps."""
