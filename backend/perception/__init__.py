"""The idol perceives: the streamer's camera and the room's mood (see README "The idol perceives").

    camera.py     pictures: OBS source screenshots over obs-websocket, or a local camera device
    landmarks.py  MediaPipe's bundled face mesh + hands models (one worker thread)
    analysis.py   pure: landmarks -> expression, looking, hand shapes; over time -> wave, nod, head shake
    reactions.py  pure: percepts -> reactions with cooldowns (director: Director.handle_reaction)
    mood.py       sentiment of chat and speech (VADER, SnowNLP) -> a slow emotion with hysteresis
    service.py    the async components: Perception (camera loop) and Mood
"""
