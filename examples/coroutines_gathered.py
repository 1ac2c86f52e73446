"""Two coroutines run concurrently on an event loop from get_event_loop().
Seed: "Asynchronous programming in Python" (Creating an event loop).
"""

import asyncio


async def coroutine_one():
    print("Coroutine started")
    await asyncio.sleep(1)
    print("Coroutine resumed")


async def coroutine_two():
    print("Coroutine two started")
    await asyncio.sleep(2)
    print("Coroutine two resumed")


# With no loop set, get_event_loop() creates one through the event loop policy
# (Python 3.12 and 3.13 warn that this is deprecated, 3.14 refuses; the seed shows it).
loop = asyncio.get_event_loop()
# The seed calls loop.run_until_complete(coroutine_one(), coroutine_two()), which is a
# TypeError: it takes one awaitable. Gathering the two runs them concurrently, as intended.
loop.run_until_complete(asyncio.gather(coroutine_one(), coroutine_two()))
loop.close()
