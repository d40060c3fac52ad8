module lorasd

go 1.19
