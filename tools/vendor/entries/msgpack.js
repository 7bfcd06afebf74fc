// The msgpack codec the chat wire format uses.
export { decode, encode } from "@msgpack/msgpack";
