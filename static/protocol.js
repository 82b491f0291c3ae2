// The wire protocol between this page and Parley's server: every socket.io event and its payload,
// as JSDoc types. It mirrors parley/protocol.py (the server's pydantic models, the source of truth);
// tests/test_protocol.py checks that both name the same events and the same fields. Nothing here
// runs: modules that speak the protocol refer to these types in their own JSDoc.

/**
 * Events the page sends, by name.
 * @typedef {object} PageEvents
 * @property {Hello} hello
 * @property {Offer} offer
 * @property {TalkStart} talk_start
 * @property {TalkEnd} talk_end
 * @property {Text} text
 * @property {Stop} stop
 * @property {Vision} vision
 * @property {HandsFree} hands_free
 * @property {NewConversation} new_conversation
 * @property {Link} link
 */

/**
 * Events the server sends, by name.
 * @typedef {object} ServerEvents
 * @property {Welcome} welcome
 * @property {Rejected} rejected
 * @property {Answer} answer
 * @property {Message} message
 * @property {Delta} delta
 * @property {State} state
 * @property {Metrics} metrics
 * @property {Speaking} speaking
 * @property {Notice} notice
 * @property {TurnStatus} turn
 * @property {Recording} recording
 */

/**
 * The page's first word on each connection: which conversation it had, and its switches.
 * @typedef {object} Hello
 * @property {string|null} [session_id]
 * @property {string|null} [session_key]
 * @property {boolean|null} [vision]
 * @property {"camera"|"screen"|null} [source]
 * @property {boolean|null} [hands_free]
 */

/**
 * The browser's WebRTC offer (microphone and camera or screen, sendrecv audio).
 * @typedef {object} Offer
 * @property {string} sdp
 * @property {string} type
 */

/**
 * Push-to-talk: the key went down.
 * @typedef {object} TalkStart
 */

/**
 * Push-to-talk: the key came up.
 * @typedef {object} TalkEnd
 */

/**
 * A typed message (acknowledged with `Ack`).
 * @typedef {object} Text
 * @property {string|null} [text]
 */

/**
 * The Stop button: interrupt the answer.
 * @typedef {object} Stop
 */

/**
 * Let the model know what the camera shows, or not; and what the video track carries now.
 * @typedef {object} Vision
 * @property {boolean} enabled
 * @property {"camera"|"screen"|null} [source]
 */

/**
 * Switch between push-to-talk and hands-free.
 * @typedef {object} HandsFree
 * @property {boolean} enabled
 */

/**
 * Forget this conversation and start over (acknowledged with `Ack`).
 * @typedef {object} NewConversation
 */

/**
 * The page's link-quality banner showed (`poor`) or cleared (`good`): sent once per change, with what
 * the page measured over its last few seconds (null: not measured). Written by link.js.
 * @typedef {object} Link
 * @property {"poor"|"good"} state
 * @property {number|null} [loss_in] Share (0-1) of Parley's voice packets lost on the way to the page.
 * @property {number|null} [loss_out] Share (0-1) of the page's audio packets lost on the way to the server (its receiver reports).
 * @property {number|null} [rtt_s] Round-trip time in seconds.
 */

/**
 * The acknowledgement of `text` and `new_conversation`: whether the server took it.
 * @typedef {object} Ack
 * @property {boolean} ok
 */

/**
 * The server took the hello: the session, its history and what the page must know.
 * @typedef {object} Welcome
 * @property {string} session_id
 * @property {string|null} session_key
 * @property {string} user
 * @property {string} ingress
 * @property {Message[]} history
 * @property {number} [earlier]
 * @property {boolean} [saved]
 * @property {object[]} ice_servers
 * @property {TurnLimits} limits
 * @property {TurnInfo} turn
 * @property {VideoLimits} video
 * @property {ModelInfo} llm
 */

/**
 * The server cannot take this session (full, or too many for this user); the page retries later.
 * @typedef {object} Rejected
 * @property {string} reason
 * @property {"full"|"too_many"} code
 */

/**
 * The server's WebRTC answer.
 * @typedef {object} Answer
 * @property {string} sdp
 * @property {string} type
 */

/**
 * A message enters the conversation (the user's words, or an answer starting to stream).
 * @typedef {object} Message
 * @property {string} id
 * @property {"user"|"assistant"} role
 * @property {string} text
 * @property {"streaming"|"done"|"interrupted"|"error"} state
 * @property {string} [unspoken] An interrupted answer's words the user never heard.
 * @property {boolean} [cut] The model stopped at its length limit.
 * @property {string|null} [scene] User: the scene note the model got with these words.
 */

/**
 * More words of a streaming answer.
 * @typedef {object} Delta
 * @property {string} id
 * @property {string} text
 */

/**
 * An answer's state changed; an interrupted one says what was heard (`text`) and what not; one
 * that Parley stopped says why (`stopped`) and what it kept (`text`).
 * @typedef {object} State
 * @property {string} id
 * @property {"streaming"|"paused"|"done"|"interrupted"|"error"} state
 * @property {boolean|null} [cut]
 * @property {string|null} [error]
 * @property {string|null} [text]
 * @property {string|null} [unspoken]
 * @property {string|null} [stopped] Why Parley itself ended the answer early (it looped, or repeated an earlier answer).
 */

/**
 * A finished turn's stage times in seconds (null: the stage did not happen). Defined in `parley.engine.metrics`.
 * @typedef {object} Metrics
 * @property {string} id
 * @property {number|null} [asr]
 * @property {number|null} [llm_ttft]
 * @property {number|null} [first_sentence]
 * @property {number|null} [tts_ttfb]
 * @property {number|null} [end_of_turn]
 * @property {number|null} [turn_to_voice]
 * @property {number|null} [voice_to_voice]
 * @property {number|null} [head_start]
 * @property {number|null} [vision_wait]
 */

/**
 * Which sentence of an answer is being heard now (`sentence` null: the answer's audio ended); `start`/`end` are its character span in the answer's text.
 * @typedef {object} Speaking
 * @property {string} id
 * @property {number|null} sentence
 * @property {number|null} [start]
 * @property {number|null} [end]
 */

/**
 * Something the user should know: a refusal, a failure, a hint.
 * @typedef {object} Notice
 * @property {"info"|"warn"|"error"} level
 * @property {string} text
 */

/**
 * What the conversation is doing now. Derived from its turns in one place (the coordinator) and sent on change.
 * @typedef {object} TurnStatus
 * @property {"idle"|"listening"|"hearing"|"thinking"|"speaking"} state
 */

/**
 * Push-to-talk: recording started or stopped (`reason`: why it stopped, if not the release).
 * @typedef {object} Recording
 * @property {boolean} active
 * @property {string|null} [reason]
 */

/**
 * TurnLimits
 * @typedef {object} TurnLimits
 * @property {number} max_record_s
 * @property {number} max_text_chars
 */

/**
 * How turns are taken here, and what keeps hands-free from doing it as configured.
 * @typedef {object} TurnInfo
 * @property {boolean} hands_free
 * @property {"model"|"silence"} end_of_turn
 * @property {string|null} [turn_models]
 * @property {number|null} [max_silence_s]
 * @property {number|null} [end_silence_s]
 * @property {string|null} [problem]
 */

/**
 * VideoLimits
 * @typedef {object} VideoLimits
 * @property {number} max_fps
 * @property {number} max_width
 */

/**
 * ModelInfo
 * @typedef {object} ModelInfo
 * @property {string} backend
 * @property {string} model
 * @property {string|null} [quality]
 * @property {boolean} vision
 * @property {"image"|"note"|"blind"} [sight]
 * @property {string|null} [sight_problem]
 */

export {};
