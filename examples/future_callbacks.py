"""A Future completed with set_result or set_exception, observed by an add_done_callback
callback and by main(); both the success and the failure path. Seed: "The Future() Object".
"""

import asyncio


# A function to simulate an asynchronous operation using a Future
async def async_operation(future, data):
    await asyncio.sleep(1)  # Simulate some async work with a delay
    # Set the result or exception based on the input data
    if data == "success":
        future.set_result("Operation succeeded")
    else:
        future.set_exception(RuntimeError("Operation failed"))


# A callback function to be called when the Future is done
def future_callback(future):
    try:
        print("Callback:", future.result())  # Attempt to print the result
    except Exception as exc:
        print("Callback:", exc)  # Print the exception if there was one


async def main(data):
    # Create a Future object
    future = asyncio.Future()
    # Add a callback to the Future
    future.add_done_callback(future_callback)
    # Start the asynchronous operation and pass the Future
    await async_operation(future, data)
    # Check if the Future is done and print its result
    if future.done():
        try:
            print("Main:", future.result())
        except Exception as exc:
            print("Main:", exc)


# The seed says "try changing 'success' to anything else": run both paths.
asyncio.run(main("success"))
asyncio.run(main("failure"))
