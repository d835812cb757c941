"""The sink core: what every subscriber that stores readings (writer, uplink) does alike."""
