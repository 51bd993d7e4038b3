def make_optimizer(opt):
    import keras
    wd = opt.weight_decay or None
    if opt.name == "adam":
        return keras.optimizers.Adam(opt.lr, weight_decay=wd)
    if opt.name == "adamw":
        return keras.optimizers.AdamW(opt.lr, weight_decay=opt.weight_decay or 0.004)
    if opt.name == "sgd":
        return keras.optimizers.SGD(opt.lr, momentum=opt.momentum, weight_decay=wd)
    return keras.optimizers.RMSprop(opt.lr, momentum=opt.momentum, weight_decay=wd)
